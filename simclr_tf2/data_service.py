"""A tf.data service for training input that one host's cores cannot feed:
a dispatcher, and workers on other machines that run the training pipeline
(reading, decoding, cropping and the views) and stream batches to the
trainers (`--data_service=grpc://DISPATCHER:PORT`).

    python -m simclr_tf2.data_service --port=5050                   # the dispatcher
    python -m simclr_tf2.data_service --dispatcher=HOST:5050 \\
        --port=5051 --worker_address=THIS_HOST:5051                 # each worker

Workers need TensorFlow and read the data at the paths the trainer names
(a bucket, or the same mount everywhere). The pipeline is sharded
dynamically: each pass is cut into parts (index_stream.py) that the workers
take in turn, so every example is read once per pass by whichever worker
is free, with the views the seed gives it wherever it is made; the order
in which workers' batches arrive is not fixed, so a restart resumes at the
part where its step falls rather than at the exact batch. Built on
tf.data.experimental.service (TensorFlow's own; nothing hand-written
beyond the command line).
"""
import sys
from typing import Optional

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags(values: flags.FlagValues = FLAGS) -> None:
    flags.DEFINE_integer("port", 5050, "Port to serve on (0: any free port, printed).",
                         flag_values=values)
    flags.DEFINE_string("dispatcher", None, "host:port of the dispatcher: start a worker "
                        "for it (without it: start the dispatcher).", flag_values=values)
    flags.DEFINE_string("worker_address", None, "host:port at which trainers reach this "
                        "worker (default localhost:<port>: a worker on the trainer's "
                        "machine).", flag_values=values)
    flags.DEFINE_string("work_dir", None, "Dispatcher: a directory (or bucket path) for "
                        "its journal, so that a restarted dispatcher resumes its jobs.",
                        flag_values=values)


def start_dispatcher(port: int = 0, work_dir: Optional[str] = None):
    """A started tf.data service dispatcher; its address is `.target`."""
    import tensorflow as tf
    service = tf.data.experimental.service
    return service.DispatchServer(service.DispatcherConfig(
        port=port, work_dir=work_dir, fault_tolerant_mode=bool(work_dir)))


def start_worker(dispatcher: str, port: int = 0, worker_address: Optional[str] = None):
    """A started worker of the dispatcher at host:port (or grpc://host:port)."""
    import tensorflow as tf
    service = tf.data.experimental.service
    return service.WorkerServer(service.WorkerConfig(
        dispatcher_address=dispatcher.split("://")[-1], port=port,
        worker_address=worker_address))


def main(argv) -> None:
    if len(argv) > 1:
        sys.exit(f"simclr_tf2.data_service: error: unexpected arguments {argv[1:]}")
    if FLAGS.dispatcher:
        server = start_worker(FLAGS.dispatcher, FLAGS.port, FLAGS.worker_address)
        # The bound port (for --port=0): TensorFlow keeps it in a private field.
        print(f"tf.data service worker of {FLAGS.dispatcher} at "
              f"{FLAGS.worker_address or server._address}", flush=True)
    else:
        server = start_dispatcher(FLAGS.port, FLAGS.work_dir)
        print(f"tf.data service dispatcher at {server.target}: train with "
              f"--data_service={server.target}", flush=True)
    server.join()


def console_main() -> None:
    import simclr_tf2  # noqa: F401  (TensorFlow's log level, before it loads)
    define_flags()
    app.run(main)


if __name__ == "__main__":
    console_main()
