"""What client and server agree on: record keys, metric keys, the request's prefixes, and MalformedReply.

A leaf module (it imports nothing), so the weight channels can name the metrics a client may send
without importing the wire format, which imports the settings. ``fedprune.federated.wire`` builds
and reads the messages with these names.
"""

ARRAYS = "arrays"      # ArrayRecord: the model, compact (kept values of masked tensors)
CONFIG = "config"      # ConfigRecord: the client's settings, the round's plan, the global mask
REPORT = "report"      # ConfigRecord: a client's mask report
METRICS = "metrics"    # MetricRecord: what the weight channel lets a client send (see weight_channel.metrics)

CLIENT_ID = "client-id"         # in METRICS: the partition id, which keys the client's ledger (public)
NUM_EXAMPLES = "num-examples"   # in METRICS where the weight channel averages by example count
PLAIN_METRICS = ("train-loss", "train-seconds")  # in METRICS only where nothing a client sends is protected
SETTING_PREFIX = "run."         # the client's settings travel as run.<key> in CONFIG
PLAN_PREFIX = "plan."           # the round's plan travels as plan.<field> keys in CONFIG
SERVER_ROUND = "server-round"  # Flower's FedAvg puts the round in every config (fedprune sets it where it samples)
CLIPPING_NORM = "clipping_norm"  # Flower's fixedclipping_mod reads it: sent under weight channel client-clipping

MASK_BITS, MASK_LENGTH = "mask.packed", "mask.length"
DPSGD_KEYS = ("dpsgd-noise", "dpsgd-rate", "dpsgd-steps")


class MalformedReply(ValueError):
    """A client's reply does not have the form the round asked for; it is dropped and counted."""
