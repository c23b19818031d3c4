from workers.benchmark import Figures, percentile, spanish_texts


class BenchmarkFiguresTests:
    def test_last_line_is_machine_readable_with_ratios(self):
        figures = Figures(limit=300.0, pipeline=150.0, batch1=15.0, mean_batch=85.3, light=(40.0, 60.5, 70.0))
        line = figures.last_line()
        assert line == (
            "limit=300.0 pipeline=150.0 batch1=15.0 vs_limit=0.500 vs_batch1=10.00 p95_light_ms=60.5 mean_batch=85.3"
        )
        assert dict(part.split("=") for part in line.split()).keys() == {
            "limit", "pipeline", "batch1", "vs_limit", "vs_batch1", "p95_light_ms", "mean_batch",
        }

    def test_percentiles(self):
        values = [float(v) for v in range(1, 101)]
        assert (percentile(values, 50), percentile(values, 95), percentile(values, 99)) == (51.0, 95.0, 99.0)

    def test_benchmark_texts_are_spanish(self):
        from translation.detection import detect_language

        texts = spanish_texts()
        assert len(texts) == 16
        assert {detect_language(text).language for text in texts} == {"es"}
