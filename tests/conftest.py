"""Before any test imports torch: its OpenMP threads sleep soon when they wait, as the scripts' do (vit/threads.py),
so that the suite beside a training run shares the cores instead of stalling both."""
from vit.threads import share_cores

share_cores()
