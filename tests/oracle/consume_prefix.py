"""Oracle for tests/state_dict.rs: applies torch's consume_prefix_in_state_dict_if_present to
the cases given as JSON on stdin ([{"keys": [[key, value]...], "metadata": [...], "prefix": p}])
and prints the resulting keys, values and metadata keys, in order, as JSON."""

import json
import sys
from collections import OrderedDict

from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

out = []
for case in json.load(sys.stdin):
    sd = OrderedDict((k, v) for k, v in case["keys"])
    if case["metadata"] is not None:
        sd._metadata = OrderedDict((k, {"version": 1}) for k in case["metadata"])
    consume_prefix_in_state_dict_if_present(sd, case["prefix"])
    meta = list(sd._metadata.keys()) if hasattr(sd, "_metadata") else None
    out.append({"keys": list(sd.items()), "metadata": meta})
json.dump(out, sys.stdout)
