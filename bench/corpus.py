"""How many upstream EndpointPickerConfigs epp loads: the corpus in tests/config/data/upstream-epp-configs
(GIE v1.5.0, llm-d-router, llm-d guides), minus placeholders and test fixtures.

    python bench/corpus.py            # counts, and the remaining failures by owner
    python bench/corpus.py --errors   # also each failing config's error
    python bench/corpus.py --route    # also route a chat and a completion request with every loadable one
                                      # through a real Envoy to epp sim engines (a few minutes; not in CI)
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.config.corpus import config_files, expectations, load_error  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--errors", action="store_true", help="print each failing config's error")
    parser.add_argument("--route", action="store_true",
                        help="route a request with every loadable config through Envoy → epp serve → epp sim")
    parser.add_argument("--only", metavar="SUBSTRING", help="with --route: only configs whose name contains it")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # deprecation warnings of the configs themselves
    table = expectations()
    real = [p for p in config_files() if p.name not in table.placeholders]
    failing = {p.name: err for p in real if (err := load_error(p)) is not None}
    print(f"loaded {len(real) - len(failing)} / {len(real)} real upstream configs "
          f"({len(table.placeholders)} placeholders and test fixtures not counted)")
    owners = collections.Counter(table.failures.get(name, ("unlisted", ""))[0] for name in failing)
    for owner, count in owners.most_common():
        print(f"  {count:3d} pending on {owner}")
    if args.errors:
        for name, err in sorted(failing.items()):
            print(f"{name}\n    {err}")
    if args.route:
        return _route([p for p in real if p.name not in failing and (args.only or "") in p.name], len(real))
    return 0


def _route(loadable: list[Path], real: int) -> int:
    from bench.corpus_route import route_all  # noqa: PLC0415 — Envoy and engines only when asked for

    outcomes = route_all(loadable)
    failed = [o for o in outcomes if not o.ok]
    print(f"routed {len(outcomes) - len(failed)} / {len(outcomes)} loaded / {real} real upstream configs")
    for outcome in failed:
        print(f"  FAIL {outcome.name}: {outcome.detail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
