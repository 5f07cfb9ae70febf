"""Trace-driven simulation of GPU placement: FGD's fill procedure and the packers it compares."""
