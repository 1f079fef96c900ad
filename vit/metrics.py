"""Classification metrics: evaluation on a labelled set, confusion matrix, per-class precision/recall/F1, and a
printable table."""
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from vit.distributed import all_reduce


@torch.no_grad()
def evaluate(net, loader, prepare, num_classes, device, autocast=nullcontext):
    """Plain cross-entropy and the confusion matrix over a loader of (images, labels), summed over processes:
    -> (mean loss, accuracy, matrix on the CPU). prepare turns a batch into the network's input on the device
    (train.py and predict.py: normalisation). Counted on the device, read back once (no GPU waits per batch)."""
    net.eval()
    loss_sum = torch.zeros((), device=device)
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    for x, y in loader:
        x, y = prepare(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        with autocast():
            logits = net(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        matrix += confusion_matrix(logits.argmax(1), y, num_classes)
    loss_sum, matrix = all_reduce(loss_sum).item(), all_reduce(matrix).cpu()
    return loss_sum / matrix.sum().item(), matrix.diag().sum().item() / matrix.sum().item(), matrix


def confusion_matrix(preds, labels, num_classes):
    """Count matrix (num_classes, num_classes) of int64: row = true class, column = predicted class.

    On the device of preds, counted without waiting for a GPU (bincount would read the largest value first)."""
    preds = torch.as_tensor(preds, dtype=torch.long).flatten()
    labels = torch.as_tensor(labels, dtype=torch.long, device=preds.device).flatten()
    counts = torch.zeros(num_classes * num_classes, dtype=torch.long, device=preds.device)
    counts.index_add_(0, labels * num_classes + preds, torch.ones_like(preds))
    return counts.reshape(num_classes, num_classes)


def classification_report(matrix, classes):
    """Accuracy, macro F1 (over the classes the labels hold: an evaluation folder may hold some of the model's) and
    per-class precision/recall/F1/support from a confusion matrix (0 where undefined)."""
    matrix = torch.as_tensor(matrix, dtype=torch.float64)
    correct = matrix.diag()
    predicted, support = matrix.sum(0), matrix.sum(1)
    precision = correct / predicted.clamp(min=1)
    recall = correct / support.clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    rows = [{"class": name, "precision": p, "recall": r, "f1": f, "support": int(s)}
            for name, p, r, f, s in zip(classes, precision.tolist(), recall.tolist(), f1.tolist(), support.tolist())]
    return {"accuracy": correct.sum().item() / max(matrix.sum().item(), 1),
            "macro_f1": f1[support > 0].mean().nan_to_num().item(), "total": int(matrix.sum().item()), "classes": rows}


def format_report(report):
    """The report as an aligned text table, one row per class, then accuracy and macro F1."""
    width = max([len("class")] + [len(row["class"]) for row in report["classes"]])
    lines = [f"{'class':<{width}}  precision  recall     f1  support"]
    for row in report["classes"]:
        lines.append(f"{row['class']:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  "
                     f"{row['f1']:5.3f}  {row['support']:7d}")
    lines.append(f"accuracy {report['accuracy']:.4f} on {report['total']} images, macro F1 {report['macro_f1']:.4f}")
    return "\n".join(lines)
