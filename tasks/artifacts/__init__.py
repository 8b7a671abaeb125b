"""Release files: what podnet installs from upstream releases (catalog), fetching and verifying them
on the laptop (download), and their sha256 sums (checksums, the checksum lock file)."""
