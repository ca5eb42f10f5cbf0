"""One way to name, find, save and rebuild objects: initializers, optimizers, losses, metrics,
layers and models each keep a Registry of their classes.

    OPTIMIZERS = Registry("optimizer")
    @OPTIMIZERS.register("adam")              # "adam" is what compile(optimizer="adam") takes
    class Adam(Optimizer): ...
    OPTIMIZERS.get("adam", Optimizer, who)    # a new Adam(); an instance is returned as it is
    OPTIMIZERS.serialize(adam)                # {"class_name": "Adam", "config": {...}}
    OPTIMIZERS.deserialize(description)       # only registered classes: a file names a class,
                                              # it never supplies one

Model files are built through these tables, so the code that reads a file needs no import of
the classes it builds (minicnn.saving finds Sequential in MODELS). A leaf: it imports only
minicnn.errors.
"""
from .errors import quote


class Registry:
    def __init__(self, kind):
        self.kind = kind
        self._by_name = {}       # the name files use -> class
        self._names = {}         # class -> the name files use
        self._aliases = {}       # lower-case string users write -> class

    def register(self, *aliases, name=None):
        """Class decorator: file name `name` (default: the class name) and user `aliases`."""
        def add(cls):
            file_name = name or cls.__name__
            self._by_name[file_name] = cls
            self._names[cls] = file_name
            for alias in aliases:
                self._aliases[alias.lower()] = cls
            return cls
        return add

    @property
    def aliases(self):
        return sorted(self._aliases)

    @property
    def names(self):
        return sorted(self._by_name)

    def by_alias(self, identifier):
        """The class a user string names (case-insensitive), or None."""
        return self._aliases.get(identifier.lower()) if isinstance(identifier, str) else None

    def get(self, identifier, base, who, hint=""):
        """An instance of `base` from an alias, a class, a serialized description or an instance."""
        if isinstance(identifier, base):
            return identifier
        if isinstance(identifier, type) and issubclass(identifier, base):
            return identifier()
        cls = self.by_alias(identifier)
        if cls is not None:
            return cls()
        raise ValueError(f"{who}: unknown {self.kind} {quote(identifier)}; expected one of {self.aliases}{hint}")

    def serialize(self, instance):
        """{'class_name': ..., 'config': instance.get_config()}, JSON-ready."""
        name = self._names.get(type(instance))
        if name is None:
            raise ValueError(f"a {type(instance).__name__} cannot be saved: it is not one of minicnn's "
                             f"{self.kind} classes {self.names}")
        return {"class_name": name, "config": instance.get_config()}

    def deserialize(self, description):
        """Inverse of serialize; a name that is not registered is refused."""
        name = description.get("class_name") if isinstance(description, dict) else None
        if not isinstance(name, str) or name not in self._by_name:
            raise ValueError(f"unknown {self.kind} {quote(name)}; expected one of {self.names}")
        config = description.get("config", {})
        if not isinstance(config, dict):
            raise ValueError(f"{self.kind} config must be a mapping, received {type(config).__name__}")
        return self._by_name[name].from_config(config)

    def __contains__(self, name):
        return isinstance(name, str) and name in self._by_name

    def __getitem__(self, name):
        return self._by_name[name]


# Models register here (minicnn.model); the saving code rebuilds them by class name.
MODELS = Registry("model")
