"""Runlet's settings: one TOML file, overridden by ``RUNLET_*`` environment variables.

`load_config` reads the file, applies the environment, checks every value and returns a
frozen `Config`. Any problem is a `ConfigError` naming the offending key by its dotted path
(``broker.urls[1]``, ``jobs.max_parallel``; ``config`` for the file itself), so the program
can say which setting to fix and stop.

This package must never fall back silently on a bad value, never hold key material (secrets
are referenced by path, like ``crypto.key_file``), and never open the files those paths
name: the code that uses a file checks it.

Environment overrides win over the file. ``RUNLET_<SECTION>__<KEY>`` sets a section key
(``RUNLET_JOBS__MAX_PARALLEL=8``); ``RUNLET_ROLE``, ``RUNLET_USER``, ``RUNLET_NODE``,
``RUNLET_DATA_DIR`` and ``RUNLET_TAGS`` set the top-level keys; ``RUNLET_CONFIG`` names the
file (without it and without ``-c``, the default places of `places` are looked at). A value
is read as TOML when it parses as one (``8``, ``["a", "b"]``), else as plain text. List
keys split plain text on commas (``RUNLET_TAGS=gpu,arm``); string and path keys take the
text as written unless it is a quoted TOML string (``RUNLET_USER=42`` is the user ``"42"``).
An unknown ``RUNLET_<SECTION>__<KEY>`` is an error; other ``RUNLET_*`` names are left to
whoever uses them.

An optional section (``[storage]``) that neither the file nor the environment mentions is
None in `Config`: the feature is off. Naming any of its keys turns it on, and then its
required keys must be set too.

The modules: `schema` (the dataclasses; each field carries its check, default and meaning),
`setting` (how a field does that, and how the fields are read back), `checks` (the value
checks), `places` (where the file is looked for), `load` (file, environment, building),
`show` (the key list, README's table and the JSON view, all read from the schema).
"""

from runlet.config.load import MAX_CONFIG_BYTES, load_config, parse_config, resolve_config_path
from runlet.config.places import (
    CONFIG_ENV,
    SYSTEM_CONFIG,
    ConfigPlace,
    default_places,
    locate_config,
    user_config_path,
)
from runlet.config.schema import (
    DEFAULT_BROKER_URL,
    DEFAULT_DATA_DIR,
    DEFAULT_SHELL,
    BrokerConfig,
    Config,
    CryptoConfig,
    JobsConfig,
    LogConfig,
    MetricsConfig,
    ServerConfig,
    StorageConfig,
    VaultConfig,
)
from runlet.config.show import as_dict, describe_keys, markdown_table

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_BROKER_URL",
    "DEFAULT_DATA_DIR",
    "DEFAULT_SHELL",
    "MAX_CONFIG_BYTES",
    "SYSTEM_CONFIG",
    "BrokerConfig",
    "Config",
    "ConfigPlace",
    "CryptoConfig",
    "JobsConfig",
    "LogConfig",
    "MetricsConfig",
    "ServerConfig",
    "StorageConfig",
    "VaultConfig",
    "as_dict",
    "default_places",
    "describe_keys",
    "load_config",
    "locate_config",
    "markdown_table",
    "parse_config",
    "resolve_config_path",
    "user_config_path",
]
