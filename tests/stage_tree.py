import shutil, sys, tomllib, pathlib
repo = pathlib.Path(sys.argv[1]); dest = pathlib.Path(sys.argv[2])
cfg = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]
for pkg in cfg["packages"]:
    parts = pkg.split(".")
    # the longest mapped prefix decides the folder
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in cfg["package-dir"]:
            src = repo / cfg["package-dir"][key] / pathlib.Path(*parts[n:]); break
    out = dest / pathlib.Path(*parts); out.mkdir(parents=True, exist_ok=True)
    for f in src.glob("*.py"):
        shutil.copy2(f, out / f.name)
