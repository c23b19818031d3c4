import pytest
from django.core.exceptions import ImproperlyConfigured

from translation import errors
from translation.routing import load_routes, queue_name, route_for, routes_for_queues

ROUTES = [
    {"source": "es", "target": "en", "engine": "hf-seq2seq", "model": "pair-model"},
    {"source": "*", "target": "en", "engine": "hf-seq2seq", "model": "many-model"},
    {"source": "*", "target": "es", "engine": "hf-seq2seq", "model": "many-model", "precision": "int8"},
]


@pytest.fixture
def routes(settings):
    settings.TRANSLATION_ROUTES = ROUTES
    yield
    load_routes.cache_clear()


class RouteForTests:
    def test_exact_source_wins_over_any_source(self, routes):
        assert route_for("es", "en").model == "pair-model"
        assert route_for("fr", "en").model == "many-model"

    def test_queue_is_one_per_target_language(self, routes):
        assert route_for("fr", "en").queue == "translate.en"
        assert route_for("en", "es").queue == queue_name("es") == "translate.es"

    def test_precision_is_carried(self, routes):
        assert route_for("en", "es").precision == "int8"

    def test_pair_without_route_raises_no_route_with_the_pair(self, routes):
        with pytest.raises(errors.NoRoute) as raised:
            route_for("en", "ja")
        assert raised.value.message == errors.NO_ROUTE.format(source="en", target="ja")

    def test_worker_queues_select_their_routes(self, routes):
        assert {r.model for r in routes_for_queues({"translate.es"})} == {"many-model"}
        assert len(routes_for_queues({"translate.en", "translate.es"})) == 3


class LoadRoutesValidationTests:
    @pytest.mark.parametrize(
        ("route", "message"),
        [
            ({"target": "xx", "model": "m"}, "unknown target language 'xx'"),
            ({"source": "qq", "target": "en", "model": "m"}, "unknown source language 'qq'"),
            ({"target": "en", "model": "m", "queue": "english"}, "queue 'english' must look like"),
            ({"target": "en", "model": "m", "engine": "magic"}, "engine 'magic' is not one of"),
            ({"target": "en", "model": "m", "precision": "fp4"}, "precision 'fp4' is not one of"),
            ({"target": "en"}, "'model' (a local path or hub id) is required"),
            ({"target": "en", "model": "m", "gpu": 1}, "unknown keys ['gpu']"),
        ],
    )
    def test_bad_route_is_refused_with_its_reason(self, settings, route, message):
        settings.TRANSLATION_ROUTES = [route]
        with pytest.raises(ImproperlyConfigured, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            load_routes()
        load_routes.cache_clear()

    def test_two_routes_for_one_pair_are_refused(self, settings):
        settings.TRANSLATION_ROUTES = [{"target": "en", "model": "a"}, {"target": "en", "model": "b"}]
        with pytest.raises(ImproperlyConfigured, match=r"a second route for \*->en"):
            load_routes()
        load_routes.cache_clear()

    def test_default_routes_cover_every_supported_language(self, settings):
        load_routes.cache_clear()
        targets = {route.target for route in load_routes()}
        assert targets == set(settings.SUPPORTED_LANGUAGES)
