"""Helpers shared by podnet's unit and plan tests (fake hosts, a scripted HTTP server,
tiny release tarballs, pyinfra @fake inventories and probe answers)."""
