"""TensorFlow's `saved_model_cli`, with the TF Text ops registered first.

The export's preprocessing runs TF Text ops (see `bert_tf2.export.custom_ops`), which plain
`saved_model_cli run` cannot load ("Op type not registered ..."); `show` works
with either. Same arguments as saved_model_cli:

  python -m bert_tf2.serving.saved_model_cli run --dir E/1 --tag_set serve \
      --signature_def serving_default --input_exprs 'text=["很好","很差"]'
"""

import sys

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow_text  # noqa: F401  (registers the TF Text ops the export uses)

from bert_tf2 import compat


if __name__ == "__main__":
    sys.argv[0] = "saved_model_cli"
    sys.exit(compat.saved_model_cli_main())
