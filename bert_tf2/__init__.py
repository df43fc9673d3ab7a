"""bert_tf2: fine-tune a Chinese BERT for sentiment classification and ship it to TF Serving.

The stages, one module each, in the order a batch flows through them:

  data            files / the built-in corpus -> tf.data batches
  tokenization    in-graph tokenizer that matches the original BERT tokenizer
  hub_modules     builds TF Hub-format preprocess/encoder SavedModels offline
  model           the Keras classifier over the hub layers
  train           the absl-flag-driven training entry point
  export          versioned, atomic SavedModel export with serving signatures

TF Hub's KerasLayer needs Keras 2, so the whole package runs on `tf_keras`. The switch must be
set before TensorFlow is first imported, which is why it lives here: every entry point imports
this package first. For the same reason this is where TensorFlow's C++ log is kept to warnings
and errors (its INFO lines about CPU instructions and CUDA drivers are noise to a user), and to
errors alone on a machine without an NVIDIA driver, where TensorFlow still probes CUDA and logs
its failure ("failed call to cuInit") as an error; a real error reaches the user as a Python
exception either way. A TF_CPP_MIN_LOG_LEVEL the user set is kept. tensorflow_hub imports
pkg_resources, which warns that it is deprecated at every start of a command; the warning is
setuptools' to tensorflow_hub, not to the user, so it is silenced here.
"""

import os
import warnings

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL",
                      "2" if os.path.exists("/proc/driver/nvidia") else "3")
warnings.filterwarnings("ignore", message="pkg_resources is deprecated as an API",
                        category=UserWarning)
