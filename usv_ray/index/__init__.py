"""The nightly nodule index: embed new tracklets, cluster each patient's into nodules."""
