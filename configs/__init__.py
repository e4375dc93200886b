"""Bundled configs (`avemo.configs`): `--config meld` reads meld.yaml from here, in a checkout or a wheel."""
