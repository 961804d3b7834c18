"""A complete local gateway: ``epp serve`` + a real Envoy in front of given model servers.

Used by ``epp demo``, the benchmarks and live trace replay; e2e tests compose the same pieces
(``local_config``, ``PickerProcess``, ``EnvoyProcess``) directly when they need odd shapes. Processes are
started picker first (Envoy fails closed until the picker answers) and stopped in reverse order, by PID.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from epp._util.proc import free_port
from epp.envoy.config import EnvoyConfig, Upstream
from epp.envoy.picker import PickerProcess
from epp.envoy.process import EnvoyProcess


def local_config(picker: Upstream | None, pool: Sequence[Upstream], workdir: Path, **options: Any) -> EnvoyConfig:
    """An ``EnvoyConfig`` on free 127.0.0.1 ports logging to ``workdir/access.log``; ``options`` override fields."""
    fields: dict[str, Any] = {
        "listen_port": free_port(),
        "admin_port": free_port(),
        "picker": picker,
        "access_log_path": str(workdir / "access.log"),
        "pool": tuple(pool),
    }
    return EnvoyConfig(**(fields | options))


class LocalGateway:
    """Picker + Envoy over ``upstreams``; ``picker_args`` go to ``epp serve``, ``envoy_options`` to ``EnvoyConfig``.

    ``pickers`` > 1 runs that many ``epp serve`` replicas (with ``--health-checking``) in one health-checked
    ext_proc cluster; ``picker`` is the first.
    """

    def __init__(
        self,
        upstreams: Sequence[Upstream],
        workdir: Path,
        *,
        picker_tls: bool = False,
        picker_args: Sequence[str] = (),
        pickers: int = 1,
        **envoy_options: Any,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        args = [*picker_args, "--health-checking"] if pickers > 1 else list(picker_args)
        self.pickers = [PickerProcess(upstreams, tls=picker_tls, extra_args=args,
                                      log_path=workdir / ("epp.log" if i == 0 else f"epp-{i + 1}.log"))
                        for i in range(pickers)]
        self.picker = self.pickers[0]
        config = local_config(self.picker.address, upstreams, workdir, picker_tls=picker_tls,
                              picker_replicas=tuple(p.address for p in self.pickers[1:]), **envoy_options)
        self.envoy = EnvoyProcess(config, workdir)

    @property
    def url(self) -> str:
        return self.envoy.url

    @property
    def access_log(self) -> Path:
        return Path(self.envoy.config.access_log_path)

    def start(self) -> None:
        started: list[PickerProcess] = []
        try:
            for picker in self.pickers:
                picker.start()
                started.append(picker)
            self.envoy.start()
        except BaseException:
            for picker in started:
                picker.stop()
            raise

    def stop(self) -> None:
        self.envoy.stop()
        for picker in self.pickers:
            picker.stop()

    def __enter__(self) -> LocalGateway:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
