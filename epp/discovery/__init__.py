"""Where endpoints come from: Kubernetes (InferencePool or a label selector) and static lists.

Discovery writes membership into the datastore (``upsert``/``remove``/``replace_all``/``mark_synced``)
and never imports scheduling. Kubernetes entry points live in ``epp.discovery.kube_setup``.
"""
