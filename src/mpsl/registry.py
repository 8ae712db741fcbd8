"""Name -> builder registries, so datasets, models and tasks are chosen by name, never by if/elif.

A registry whose names are a config choice says so (`Registry("fusion", config_keys=("model.fusion",))`):
the config types that key as a plain string and `check_choices` checks it against what is registered
when the config is used, plugins included. No list of names is written anywhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from mpsl.errors import ConfigError

T = TypeVar("T")
_CHOICES: dict[str, Registry[Any]] = {}  # config key -> the registry its value names an entry of


class Registry(Generic[T]):
    """A named table of builders; an unknown name is an error that lists the registered ones."""

    def __init__(self, kind: str, config_keys: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.config_keys = config_keys
        self._items: dict[str, T] = {}
        for key in config_keys:
            if key in _CHOICES:
                raise ValueError(f"config key {key} is bound to two registries ({_CHOICES[key].kind}, {kind})")
            _CHOICES[key] = self

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(self.unknown(name)) from None

    def unknown(self, name: object) -> str:
        """The one wording of an unknown name: what it is, and every name there is."""
        return f"unknown {self.kind} {name!r} (registered: {', '.join(self.names()) or 'none'})"

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def config_choices() -> dict[str, Registry[Any]]:
    """Config key -> registry, for every registry defined so far (those of the modules imported)."""
    return dict(sorted(_CHOICES.items()))


def check_choices(cfg: Any) -> None:
    """Every config value that names a registry entry names a registered one, plugins included.

    Called where the registries are defined, by what uses the config (mpsl.experiment.run.check_names,
    the deploy applications, the partition report): a registry not imported there is not checked here,
    and none of its names is used there either.
    """
    for key, registry in config_choices().items():
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        for name in value if isinstance(value, tuple | dict) else (value,):  # a dict: its keys
            if name is not None and name not in registry:
                raise ConfigError(f"{key}: {registry.unknown(name)}")
