"""What every capsal command does around its own work, in one place."""

from __future__ import annotations

import sys
from collections.abc import Callable

import hydra
from omegaconf import DictConfig

from capsal.config_schema import check_command_line
from capsal.errors import exit_on_user_error


def command(program: str, config_name: str, work: Callable[[DictConfig], object]) -> Callable[[], None]:
    """The console entry point of ``program``: its command line composed as Hydra will (a bad key or group option is
    one line and exit code 2 before anything starts), then ``work`` on the composed ``capsal/conf/<config_name>``,
    where a :class:`~capsal.errors.UserError` is one line and exit code 2 as well."""

    @hydra.main(version_base="1.3", config_path="../conf", config_name=config_name)
    def run(cfg: DictConfig) -> None:
        with exit_on_user_error(program):
            work(cfg)

    def main() -> None:
        check_command_line(program, config_name, sys.argv[1:])
        run()

    return main
