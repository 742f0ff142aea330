import os
import sys

HERE = os.path.dirname(__file__)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # launcher
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..")))  # the moonring package
