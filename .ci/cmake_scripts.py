"""Rewrite MODULE_PYTHON_SCRIPTS in SegmentLesion/CMakeLists.txt from the Python files on disk (run after adding a module).

Usage: python3 .ci/cmake_scripts.py   (Testing/test_panel.py checks that the list is complete)
"""

from pathlib import Path

module = Path(__file__).resolve().parents[1] / "SegmentLesion"
cmake = module / "CMakeLists.txt"
text = cmake.read_text(encoding="utf-8")
start = text.index("set(MODULE_PYTHON_SCRIPTS\n")
end = text.index("  )\n", start)
files = sorted(p.relative_to(module).as_posix() for p in (module / "SegmentLesionLib").rglob("*.py") if "__pycache__" not in p.parts)
lines = ["  ${MODULE_NAME}.py"] + ["  " + f.replace("SegmentLesionLib/", "${MODULE_NAME}Lib/", 1) for f in files]
cmake.write_text(text[:start] + "set(MODULE_PYTHON_SCRIPTS\n" + "\n".join(lines) + "\n" + text[end:], encoding="utf-8")
print(f"{cmake}: {len(lines)} scripts")
