"""Detection losses, element-wise and unreduced: sigmoid cross-entropy, focal loss, Huber."""

from keras import ops


def sigmoid_cross_entropy(labels, logits):
    """Binary cross-entropy with logits, stable: max(x, 0) - x * z + log(1 + exp(-|x|))."""
    labels = ops.cast(labels, "float32")
    logits = ops.cast(logits, "float32")
    return ops.relu(logits) - logits * labels + ops.log1p(ops.exp(-ops.abs(logits)))


def sigmoid_focal_loss(labels, logits, alpha=0.25, gamma=1.5):
    """Focal loss of Lin et al. 2017 per element: alpha-balanced, (1 - p_t)^gamma-modulated BCE."""
    labels = ops.cast(labels, "float32")
    logits = ops.cast(logits, "float32")
    probs = ops.sigmoid(logits)
    p_t = labels * probs + (1.0 - labels) * (1.0 - probs)
    alpha_t = labels * alpha + (1.0 - labels) * (1.0 - alpha)
    return alpha_t * ops.power(1.0 - p_t, gamma) * sigmoid_cross_entropy(labels, logits)


def huber_loss(targets, predictions, delta=0.1):
    """Huber loss per element: quadratic within delta, linear outside."""
    error = ops.abs(ops.cast(predictions, "float32") - ops.cast(targets, "float32"))
    quadratic = ops.minimum(error, delta)
    return 0.5 * quadratic**2 + delta * (error - quadratic)
