"""Knowledge distillation: a student CTC reader learns a teacher's per-step distributions.

    caocrvfy train --teacher models/captcha-6x62 --init models/captcha-6x62-small --column-stride 4 \\
        --charset 0-9a-zA-Z --length 6 --width 160 --height 60 --time-limit 60

Each training step's loss is

    (1 - w) * the student's own loss on the true labels
    + w * T^2 * mean over steps of KL(teacher_T || student_T),   p_T = softmax(log p / T)

(Hinton, Vinyals and Dean, 2015): the softened teacher tells the student how much each
look-alike character is worth at each column, which a label does not. The T^2 keeps the soft
term's gradients at the scale of the hard one as T changes. Validation scores the true labels
only, so early stopping and the plateau cut compare like with like. The teacher reads the
images the student is given, before the student's own augmentation layers.

The teacher must be a CTC reader with the student's input size, character set and number of
time steps (the same --column-stride); it is frozen, and it is not saved with the student.
"""

from __future__ import annotations

from caocrvfy.errors import DataError

TEMPERATURE = 2.0
WEIGHT = 0.5  # of the soft term; the true labels' loss weighs 1 - WEIGHT


def softened(probs, temperature: float):
    """Softmax outputs at temperature T: softmax(log p / T), the same as dividing the logits by T."""
    from keras import ops

    log_probs = ops.log(ops.clip(ops.cast(probs, "float32"), 1e-12, 1.0))
    return ops.softmax(log_probs / temperature, axis=-1)


def distillation_loss(teacher_probs, student_probs, temperature: float = TEMPERATURE):
    """T^2 * KL(teacher_T || student_T) per captcha, averaged over its time steps: (batch,)."""
    from keras import ops

    t = softened(teacher_probs, temperature)
    s = softened(student_probs, temperature)
    kl = ops.sum(t * (ops.log(ops.clip(t, 1e-12, 1.0)) - ops.log(ops.clip(s, 1e-12, 1.0))), axis=-1)
    return temperature ** 2 * ops.mean(kl, axis=-1)


def check_teacher(teacher, teacher_config, student, student_config, name: str) -> None:
    """One sentence naming the teacher and the mismatch when it cannot teach this student."""
    if teacher_config.head != "ctc" or student_config.head != "ctc":
        raise DataError(f"--teacher {name}: distillation needs CTC readers on both sides (the teacher is "
                        f"{teacher_config.head}, the student {student_config.head}); give --head ctc and a CTC teacher.")
    if tuple(teacher_config.input_shape) != tuple(student_config.input_shape):
        raise DataError(f"--teacher {name} reads {teacher_config.input_shape} images and the student "
                        f"{student_config.input_shape}: give the teacher's --width, --height and --channels.")
    if teacher_config.charset != student_config.charset:
        raise DataError(f"--teacher {name} reads the characters {teacher_config.charset!r}, the student "
                        f"{student_config.charset!r}: give the teacher's --charset.")
    steps, student_steps = teacher.output_shape[1], student.output_shape[1]
    if steps != student_steps:
        raise DataError(f"--teacher {name} has {steps} time steps and the student {student_steps}: give the "
                        f"teacher's --column-stride ({teacher_config.column_stride}).")


def load_teacher(path: str, student, student_config):
    """The frozen teacher model from a run folder or model.keras, checked against the student."""
    from caocrvfy.locations import resolve_model_path
    from caocrvfy.model_config import load_model_config
    from caocrvfy.model_enhanced import load_saved_model

    model_path, config_path = resolve_model_path(path)
    teacher_config = load_model_config(config_path)
    teacher = load_saved_model(model_path)
    check_teacher(teacher, teacher_config, student, student_config, path)
    teacher.trainable = False
    return teacher


def attach_teacher(model, teacher, temperature: float = TEMPERATURE, weight: float = WEIGHT) -> None:
    """Makes `model`'s training loss the distillation loss above; its evaluation loss stays its
    own. Keras calls `compute_loss(x, y, y_pred, sample_weight, training)` in every train and test
    step; the compiled loss and metrics are untouched, and nothing of the teacher is saved."""
    from keras import ops

    own = model.compute_loss

    def compute_loss(x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = own(x, y, y_pred, sample_weight, training=training)
        if not training:
            return loss
        soft = ops.stop_gradient(teacher(x, training=False))
        return (1.0 - weight) * loss + weight * ops.mean(distillation_loss(soft, y_pred, temperature))

    model.compute_loss = compute_loss
