"""The classification methods' names, as the tables, plots and predictions spell them."""

from __future__ import annotations

VARIABLE = "Variable-frame CNNLSTM"
EQUAL = "Equal-frame CNNLSTM"
TABLE3 = ("CNN_Vote", "CNN_Aver", VARIABLE)
TABLE4 = ("R(2+1)D", "C3D_BN", "R3D", "Key_Frame", EQUAL, VARIABLE)


def equal_method(frames: int, main: int) -> str:
    """The method name of an equal-frame set: the paper's name for the main N."""
    return EQUAL if frames == main else f"{EQUAL} (N={frames})"


def method_slug(method: str) -> str:
    """A method's name as it appears in the file names of its plots."""
    return method.replace("(", "").replace(")", "").replace("+", "p").replace(" ", "_")
