def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "e2e: needs real external inputs (Debian packages via apt, built artifacts); slow the first time",
    )
    config.addinivalue_line(
        "markers",
        "only_bed(name): run this end-to-end test on that test cluster only (tests/test_e2e.py); "
        "its other clusters deselect it",
    )


def pytest_collection_modifyitems(config, items):
    """Deselect (not skip) tests marked only_bed(name) for the clusters they do not concern."""
    keep, drop = [], []
    for item in items:
        marker = item.get_closest_marker("only_bed")
        callspec = getattr(item, "callspec", None)
        bed = callspec.params.get("bed") if callspec is not None else None
        if marker is not None and bed is not None and getattr(bed, "name", None) != marker.args[0]:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
