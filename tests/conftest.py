def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "e2e: needs real external inputs (Debian packages via apt, built artifacts); slow the first time",
    )
