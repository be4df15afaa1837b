"""Typed-config machinery: dataclasses in, validated objects out.

* `parse(cls, data)` turns a nested dict (from YAML and/or dotted CLI overrides) into the
  dataclass `cls`, checking every key and type; unknown keys get a "did you mean".
* `Component` is a registry-selected part: ``{"name": "swiglu", "hidden_mult": 4}``. Its
  options are checked against the registered class's ``Config`` dataclass, or, for plain
  callables such as ``torch.optim.AdamW``, against the keyword defaults of its signature.
* `to_dict(obj)` is the inverse, used to save the fully resolved config with each run.
* `apply_overrides(data, ["model.n_layer=4", ...])` sets dotted keys.

A dataclass may define ``validate(self)`` for range checks; it raises through `check`.
Errors are `ConfigError` with the dotted key, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import yaml

from .errors import ConfigError, did_you_mean
from .registry import get as registry_get
from .registry import names as registry_names


class InvalidValue(ConfigError):
    """A range/consistency error raised by `check`; `parse` prefixes the key's full path."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"config {key}={value!r} is invalid: {allowed}")

    def under(self, path: str) -> InvalidValue:
        if not path or self.key.startswith(path + "."):
            return self
        return InvalidValue(_join(path, self.key), self.value, self.allowed)


def check(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise "config key=value is invalid: allowed" unless `ok` (key relative to the dataclass)."""
    if not ok:
        raise InvalidValue(key, value, allowed)


class ConfigBase:
    """Mixin for config dataclasses: resolves component fields and runs ``validate()``
    on construction, so ``DataConfig(corpus={"name": "text", "path": "a.txt"})`` works
    the same as parsing it from YAML."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            kind = f.metadata.get("component")
            if kind is not None and not isinstance(getattr(self, f.name), Component):
                setattr(self, f.name, parse_component(kind, getattr(self, f.name), f.name, _default_name(f)))
        validate = getattr(self, "validate", None)
        if validate is not None:
            validate()


@dataclass
class Component:
    """A registry-selected part and its options (a Config dataclass instance or a dict)."""

    kind: str
    name: str
    options: Any = None

    @property
    def cls(self) -> Any:
        return registry_get(self.kind, self.name)

    def kwargs(self) -> dict[str, Any]:
        """Options as keyword arguments (for signature-schema parts)."""
        if dataclasses.is_dataclass(self.options):
            return {f.name: getattr(self.options, f.name) for f in dataclasses.fields(self.options)}
        return dict(self.options or {})


def component(kind: str, name: str, **options: Any) -> Any:
    """A dataclass field holding a `Component` of registry `kind`, default `name(**options)`."""

    def make() -> dict[str, Any]:
        return {"name": name, **options}

    # The default is the raw spec; `parse` resolves it against the registry.
    return field(default_factory=make, metadata={"component": kind})


# ---------------------------------------------------------------------------- parsing


def parse(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from `data` (a mapping), validating keys, types and ranges."""
    if data is None:
        data = {}
    if isinstance(data, cls):
        data = to_dict(data)
    if not isinstance(data, dict):
        raise ConfigError(f"config {path or '<root>'} must be a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            full = _join(path, str(key))
            raise ConfigError(
                f"unknown config key {full!r}{did_you_mean(str(key), fields)}; "
                f"allowed keys{' under ' + repr(path) if path else ''}: {', '.join(fields)}"
            )
    kwargs = {}
    for name, f in fields.items():
        key = _join(path, name)
        if name in data:
            raw = data[name]
        elif f.default is not dataclasses.MISSING:
            raw = f.default
        elif f.default_factory is not dataclasses.MISSING:
            raw = f.default_factory()
        else:
            raise ConfigError(f"config key {key!r} is required")
        if "component" in f.metadata:
            kwargs[name] = parse_component(f.metadata["component"], raw, key, _default_name(f))
        else:
            kwargs[name] = coerce(raw, hints[name], key)
    try:
        obj = cls(**kwargs)
        if not isinstance(obj, ConfigBase) and hasattr(obj, "validate"):
            obj.validate()
    except InvalidValue as e:
        raise e.under(path) from None
    return obj


def _default_name(f: dataclasses.Field) -> str | None:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory().get("name")
    return None


def parse_component(kind: str, raw: Any, path: str, default_name: str | None = None) -> Component:
    """Resolve ``{"name": ..., **options}`` against registry `kind`."""
    if isinstance(raw, Component):
        raw = component_to_dict(raw)
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping with a 'name' key, got {raw!r}")
    raw = dict(raw)
    name = raw.pop("name", default_name)
    if name is None:
        raise ConfigError(f"config {path}.name is required; registered {kind}s: {', '.join(registry_names(kind))}")
    if not isinstance(name, str) or name not in registry_names(kind):
        raise ConfigError(
            f"config {path}.name={name!r} is not a registered {kind}{did_you_mean(str(name), registry_names(kind))}; "
            f"registered: {', '.join(registry_names(kind))}"
        )
    target = registry_get(kind, name)
    schema = getattr(target, "Config", None)
    if schema is not None and dataclasses.is_dataclass(schema):
        return Component(kind, name, parse(schema, raw, path))
    return Component(kind, name, _parse_signature_options(target, raw, path))


def _parse_signature_options(target: Any, raw: dict, path: str) -> dict[str, Any]:
    """Options checked against the keyword defaults of `target`'s signature."""
    allowed: dict[str, inspect.Parameter] = {}
    for p in inspect.signature(target).parameters.values():
        if p.default is not inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            allowed[p.name] = p
    out = {name: p.default for name, p in allowed.items()}
    for key, value in raw.items():
        if key not in allowed:
            raise ConfigError(
                f"unknown config key {_join(path, key)!r}{did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}"
            )
        p = allowed[key]
        out[key] = value if p.default is None else coerce(value, _type_of_default(p.default, p.annotation),
                                                          _join(path, key))
    return out


def _type_of_default(default: Any, annotation: Any = inspect.Parameter.empty) -> Any:
    """The type a signature option accepts, from its default (and annotation for numbers:
    ``momentum: float = 0`` takes floats)."""
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return float if "float" in str(annotation) else int | float
    if isinstance(default, float):
        return float
    if isinstance(default, tuple):
        return tuple[tuple(_type_of_default(d) for d in default)] if default else tuple
    return type(default)


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against type `tp`, converting CLI strings and YAML lists where unambiguous."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, key)
            except ConfigError:
                pass
        raise ConfigError(f"config {key}={value!r} has the wrong type: expected {_tname(tp)}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(
            f"config {key}={value!r} is invalid{did_you_mean(str(value), [str(a) for a in args])}; "
            f"allowed: {', '.join(map(str, args))}"
        )
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"config {key}={value!r} has the wrong type: expected true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"config {key}={value!r} has the wrong type: expected an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config {key}={value!r} has the wrong type: expected a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config {key}={value!r} has the wrong type: expected a string")
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, str):
            value = _parse_cli_sequence(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config {key}={value!r} has the wrong type: expected a list")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"config {key}={value!r} must have {len(args)} elements")
            return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        elem = args[0] if args else Any
        items = [coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config {key}={value!r} has the wrong type: expected a mapping")
        vt = args[1] if args else Any
        return {str(k): coerce(v, vt, _join(key, str(k))) for k, v in value.items()}
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"config {key}={value!r} has the wrong type: expected {_tname(tp)}")


def _parse_cli_sequence(s: str) -> Any:
    loaded = yaml.safe_load(s) if s.strip().startswith("[") else None
    if isinstance(loaded, list):
        return loaded
    return [part.strip() for part in s.split(",") if part.strip()]


def _tname(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# ---------------------------------------------------------------------------- output


def component_to_dict(c: Component) -> dict[str, Any]:
    return {"name": c.name, **{k: to_dict(v) for k, v in c.kwargs().items()}}


def to_dict(obj: Any) -> Any:
    """Plain YAML-able structure of a parsed config (the resolved config saved per run)."""
    if isinstance(obj, Component):
        return component_to_dict(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=None)


# ---------------------------------------------------------------------------- input


def load_yaml(path: str) -> dict[str, Any]:
    """Read a YAML config file into a dict; a clear error for missing/invalid files."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping at the top level")
    return data


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` merged into a copy of `base`; nested mappings merge, everything else replaces."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def apply_overrides(data: dict[str, Any], overrides: list[tuple[str, str]]) -> dict[str, Any]:
    """Set dotted keys: ``[("model.n_layer", "4")]``. Values stay strings; `parse` types them."""
    out = dict(data)
    for dotted, value in overrides:
        parts = dotted.split(".")
        if not all(parts):
            raise ConfigError(f"override key {dotted!r} is malformed; use dotted keys like model.n_layer")
        out = deep_merge(out, nest(parts, value))
    return out


def nest(parts: list[str], value: Any) -> dict[str, Any]:
    """['a', 'b'], v -> {'a': {'b': v}}: a dotted key as a partial config."""
    d: Any = value
    for p in reversed(parts):
        d = {p: d}
    return d
