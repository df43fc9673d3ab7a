"""Writes the TF Serving model config (`models.config`) that serves one export directory.

  python -m bert_tf2.serving.config --export_dir=runs/quickstart/export \
      --model_name=sentiment [--base_path=/models/sentiment] \
      [--version_policy=latest:N|all|specific:1,2] --output=models.config

  tensorflow_model_server --port=8500 --rest_api_port=8501 --model_config_file=models.config

The file is a text-format `tensorflow.serving.ModelServerConfig`, built with the serving protos
and `text_format` (so it always parses), for example:

  model_config_list {
    config {
      name: "sentiment"
      base_path: "/models/sentiment"
      model_platform: "tensorflow"
      model_version_policy {
        latest {
          num_versions: 1
        }
      }
    }
  }

`base_path` is the directory holding the numeric versions, as the *server* sees it: inside
the stock Docker image the export is bind-mounted at /models/<name>, so pass --base_path.
"""

import os
import re
import sys
from typing import Optional

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from absl import flags, logging
from google.protobuf import text_format
from tensorflow_serving.config import file_system_storage_path_source_pb2
from tensorflow_serving.config import model_server_config_pb2

from bert_tf2 import cli
from bert_tf2 import config as config_lib
from bert_tf2 import flags as project_flags
from bert_tf2 import io_utils

FLAGS = flags.FLAGS
_VersionPolicy = (file_system_storage_path_source_pb2
                  .FileSystemStoragePathSourceConfig.ServableVersionPolicy)


def parse_version_policy(spec: str) -> "_VersionPolicy":
    """'latest[:N]', 'all' or 'specific:V1,V2,...' -> a ServableVersionPolicy message."""
    policy = _VersionPolicy()
    spec = spec.strip()
    match = re.fullmatch(r"latest(?::(\d+))?", spec)
    if match:
        num_versions = int(match.group(1) or 1)
        if num_versions < 1:
            raise ValueError(f"version policy {spec!r}: latest:N needs N >= 1")
        policy.latest.num_versions = num_versions
        return policy
    if spec == "all":
        policy.all.SetInParent()
        return policy
    match = re.fullmatch(r"specific:(\d+(?:\s*,\s*\d+)*)", spec)
    if match:
        versions = sorted({int(v) for v in match.group(1).split(",")})
        if 0 in versions:
            raise ValueError(f"version policy {spec!r}: versions start at 1")
        policy.specific.versions.extend(versions)
        return policy
    raise ValueError(f"version policy {spec!r} is not one of 'latest:N', 'all' or "
                     "'specific:V1,V2,...'")


def build_model_server_config(*, model_name: str, base_path: str,
                              version_policy: str = "latest:1"
                              ) -> model_server_config_pb2.ModelServerConfig:
    """A ModelServerConfig serving `base_path` (a directory of numeric versions) as `model_name`."""
    if not model_name or "/" in model_name or ":" in model_name:
        raise ValueError(f"model name {model_name!r} must be non-empty, without '/' or ':' "
                         "(it appears in /v1/models/NAME:predict)")
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = model_name
    model.base_path = base_path
    model.model_platform = "tensorflow"
    model.model_version_policy.CopyFrom(parse_version_policy(version_policy))
    return config


def config_text(config: model_server_config_pb2.ModelServerConfig) -> str:
    return text_format.MessageToString(config, as_utf8=True)


def parse_config_text(text: str) -> model_server_config_pb2.ModelServerConfig:
    """Parses a models.config as TF Serving does (text-format ModelServerConfig)."""
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def check_export_dir(export_dir: str, version_policy: str) -> None:
    """Logs what the server will find under `export_dir` (which may only exist there)."""
    versions = io_utils.existing_versions(export_dir)
    if not versions:
        logging.warning("%s holds no numeric version directories yet; TF Serving will wait "
                        "until one appears", export_dir)
        return
    policy = parse_version_policy(version_policy)
    if policy.HasField("specific"):
        missing = sorted(set(policy.specific.versions) - set(versions))
        if missing:
            logging.warning("versions %s are not in %s (it has %s); TF Serving will not "
                            "become ready for them until they appear", missing, export_dir,
                            versions)
    logging.info("%s holds versions %s", export_dir, versions)


def refuse_version_dir(export_dir: str) -> None:
    """Raises a UserError when `export_dir` holds a SavedModel itself: TF Serving would find
    no numeric versions under it and serve nothing."""
    if not io_utils.isfile(io_utils.join(export_dir, "saved_model.pb")):
        return
    name = io_utils.basename(export_dir)
    if re.fullmatch(r"\d+", name):
        parent = io_utils.dirname(export_dir)
        raise cli.UserError(f"--export_dir={export_dir}: that is a version directory; pass its "
                            f"parent {parent}")
    raise cli.UserError(f"--export_dir={export_dir} holds a SavedModel itself, but TF Serving "
                        f"serves the numeric version directories under it: move the SavedModel "
                        f"into {io_utils.join(export_dir, '1')}")


def batching_parameters_text(max_batch_size: int = 256,
                             num_batch_threads: Optional[int] = None) -> str:
    """TF Serving's BatchingParameters (text format) for our exports.

    The export classifies a request in length-sorted sub-batches of SERVING_SUB_BATCH
    texts, so batches TF Serving forms from concurrent requests are best made of whole
    sub-batches: the allowed sizes are 8, 16 and 32 for light load, then multiples of the
    sub-batch up to `max_batch_size` (TF Serving needs the last to be max_batch_size). The
    input is a vector of strings, so no padding of variable-length inputs is needed.
    """
    sub_batch = config_lib.SERVING_SUB_BATCH
    sizes = sorted({size for size in (8, 16, 32) if size < max_batch_size}
                   | set(range(sub_batch, max_batch_size, sub_batch)) | {max_batch_size})
    threads = num_batch_threads or os.cpu_count() or 1
    return "".join([
        f"max_batch_size {{ value: {max_batch_size} }}\n",
        "batch_timeout_micros { value: 2000 }\n",
        f"num_batch_threads {{ value: {threads} }}\n",
        "max_enqueued_batches { value: 100 }\n",
        *(f"allowed_batch_sizes: {size}\n" for size in sizes),
        "pad_variable_length_inputs: false\n"])


def write_config(output: str, text: str) -> None:
    if output == "-":
        sys.stdout.write(text)
        return
    # Atomic: a server started with --model_config_file_poll_wait_seconds re-reads the file.
    with io_utils.atomic_file(output) as f:
        f.write(text)


@cli.one_line_errors("serving.config")
def main(argv, flag_values: Optional[flags.FlagValues] = None) -> None:
    del argv
    flags_ = flag_values or FLAGS
    if not flags_.export_dir:
        raise cli.UserError("--export_dir is required: the directory holding the numeric "
                            "versions")
    refuse_version_dir(flags_.export_dir)
    if flags_.output != "-":
        io_utils.check_writable_file(flags_.output, "--output")
    base_path = flags_.base_path or io_utils.abspath(flags_.export_dir)
    try:
        config = build_model_server_config(model_name=flags_.model_name, base_path=base_path,
                                           version_policy=flags_.version_policy)
    except ValueError as error:
        raise cli.UserError(str(error)) from None
    check_export_dir(flags_.export_dir, flags_.version_policy)
    write_config(flags_.output, config_text(config))
    if flags_.output != "-":
        logging.info("Wrote %s (model %r at %s)", flags_.output, flags_.model_name, base_path)
    if flags_.batching_parameters:
        write_config(flags_.batching_parameters,
                     batching_parameters_text(flags_.max_batch_size))
        logging.info("Wrote %s", flags_.batching_parameters)


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    project_flags.define_serving_config_flags(flag_values)


if __name__ == "__main__":
    cli.run("serving.config", main, define_flags)
