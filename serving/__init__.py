"""Serving: the BentoML service, the next-best-action policy and the nightly batch scoring."""
