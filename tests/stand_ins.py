"""Stand-in engines for unit tests of the execution layer: the engine interface, no model."""

from translation.engines import EngineSpec, TranslationEngine


class StandInEngine(TranslationEngine):
    """Subclasses answer ``translate``; loading and memory are nothing."""

    spec = EngineSpec("stand-in", "stand-in")

    def load(self) -> None:
        pass

    def unload(self) -> None:
        pass

    @property
    def memory_bytes(self) -> int:
        return 0
