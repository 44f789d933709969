"""Data parallelism for the trainer: tf.distribute on TensorFlow, keras.distribution on JAX.

Either way the global batch is split across the replicas and the loss equals the loss of
one process on the same global batch: on TensorFlow each replica computes its share with
the positive-anchor count summed over all replicas (`cross_replica_sum`, passed to
`RetinaNet.compile`); on JAX the step is one SPMD program over the global batch, so its
sums are global already.
"""

import contextlib
import dataclasses
from collections.abc import Callable

import keras


@dataclasses.dataclass
class Distribution:
    name: str
    num_replicas: int
    is_chief: bool  # the one process that writes checkpoints, logs and metrics
    scope: Callable[[], contextlib.AbstractContextManager]
    cross_replica_sum: Callable | None = None
    release: Callable[[], None] = lambda: None  # back to one device (for evaluation)


def cross_replica_sum(value):
    """Sum of `value` over the replicas of the running tf.distribute step."""
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def _multi_worker_mirrored_strategy():
    """MultiWorkerMirroredStrategy whose `reduce` also takes what Keras 3's `fit` gives it.

    With more than one worker, Keras 3.15's TensorFlow trainer (`fit`) calls `reduce` in
    two ways the stock strategy rejects (MirroredStrategy maps its reduction over nests,
    and Keras passes `axis=0` for the logs only under multi-worker):

    - `_maybe_symbolic_build` reduces the whole first batch, an (images, labels) nest of
      PerReplica values, with `reduce("MEAN", batch, axis=None)`. The multi-worker
      reduction takes one value only and tries to convert the nest to a tensor: "Attempt
      to convert a value (PerReplica...) to a Tensor". (One worker passes: it returns the
      nest as it is without a collective.)
    - each step's logs (scalars such as the loss) are reduced with
      `reduce("MEAN", value, axis=0)`, and a scalar has no axis 0.

    Here a nest is reduced value by value, and `axis` is dropped for a scalar (its mean
    over the replicas, what MirroredStrategy gives for the same logs).
    """
    import tensorflow as tf

    class Strategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis=None):
            def reduce_one(one):
                rank = self.experimental_local_results(one)[0].shape.rank
                return super(Strategy, self).reduce(reduce_op, one, None if rank == 0 else axis)

            return tf.nest.map_structure(reduce_one, value)

    return Strategy()  # the cluster comes from TF_CONFIG


def _tensorflow(strategy_name, tpu_address):
    import tensorflow as tf

    if strategy_name == "mirrored":  # all GPUs, else all (logical) CPUs
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        strategy = tf.distribute.MirroredStrategy([device.name for device in devices])
    elif strategy_name == "multi_worker":
        strategy = _multi_worker_mirrored_strategy()
    elif strategy_name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
    else:
        strategy = tf.distribute.get_strategy()
    replicas, is_chief = strategy.num_replicas_in_sync, strategy.extended.should_checkpoint
    return Distribution(strategy_name, replicas, is_chief, strategy.scope, cross_replica_sum)


def _jax(strategy_name):
    """`mirrored` and `tpu`: all local devices; `multi_worker`: all devices of all processes,
    after `keras.distribution.initialize()` (KERAS_DISTRIBUTION_* environment variables)."""
    import jax

    if strategy_name == "default":
        return Distribution(strategy_name, 1, True, contextlib.nullcontext)
    if strategy_name == "multi_worker":
        keras.distribution.initialize()
    devices = keras.distribution.list_devices()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return Distribution(
        strategy_name,
        len(devices),
        jax.process_index() == 0,
        contextlib.nullcontext,
        release=lambda: keras.distribution.set_distribution(None),
    )


def make_distribution(runtime):
    """The `runtime.strategy` of an experiment on the current Keras backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tensorflow(runtime.strategy, runtime.tpu)
    if backend == "jax":
        return _jax(runtime.strategy)
    if runtime.strategy != "default":
        raise ValueError(
            f"runtime.strategy={runtime.strategy} needs the tensorflow or jax backend, not {backend}."
        )
    return Distribution(runtime.strategy, 1, True, contextlib.nullcontext)
