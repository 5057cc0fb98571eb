"""The tf.distribute strategy of a run, and which worker is the chief."""
import tensorflow as tf

from simclr_tf2.configs.schema import check
from simclr_tf2.data.pipeline import replicas_on_cpus
from simclr_tf2.errors import RunError
from simclr_tf2.training.run_config import RunConfig


def make_strategy(run_config: RunConfig) -> tf.distribute.Strategy:
    """The tf.distribute strategy `run_config.strategy` names."""
    from official.common import distribute_utils
    name = run_config.strategy
    gpus = tf.config.list_physical_devices("GPU")
    if name == "auto":
        name = ("tpu" if run_config.tpu else "mirrored" if len(gpus) > 1
                or run_config.num_cpu_devices > 1 else "one_device")
    if run_config.num_cpu_devices > 1:
        split_cpu(run_config.num_cpu_devices)
    if name == "tpu":
        check(bool(run_config.tpu), "strategy tpu needs --tpu (name or grpc:// address)")
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=run_config.tpu, zone=run_config.tpu_zone, project=run_config.gcp_project)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if name == "mirrored" and not gpus and run_config.num_cpu_devices > 1:
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices[:run_config.num_cpu_devices])
    num_gpus = len(gpus) if run_config.num_gpus < 0 else run_config.num_gpus
    return distribute_utils.get_distribution_strategy(name, num_gpus=num_gpus)


def split_cpu(count: int) -> None:
    """Makes the host CPU `count` logical devices, unless it already has at
    least that many (a process splits it once, before TensorFlow starts:
    a test session, or an earlier run in the same process)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    have = tf.config.get_logical_device_configuration(cpu) or []
    if len(have) >= count:
        return
    if have:
        raise RunError(f"num_cpu_devices={count}, but this process already split the CPU "
                       f"into {len(have)} devices, and TensorFlow fixes that at start: "
                       f"use num_cpu_devices <= {len(have)} or a new process")
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as error:  # TensorFlow already started in this process
        raise RunError(f"num_cpu_devices={count} cannot split the CPU after TensorFlow "
                       f"started in this process ({error}): pass it to a new process, "
                       "before any TensorFlow op runs") from error


def is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0
                                            and "chief" not in resolver.cluster_spec().as_dict())


def augment_on(setting: str, strategy: tf.distribute.Strategy) -> str:
    """'host' or 'device' for DataConfig.augment_on: 'auto' is device when
    the replicas are GPUs or TPUs (the host's cores are then the input's
    limit), host when they are CPUs (the same cores do both; per image the
    host's ops are as cheap: bench/RESULTS.md, "Augmentation on the device")."""
    if setting != "auto":
        return setting
    return "host" if replicas_on_cpus(strategy) else "device"
