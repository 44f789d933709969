"""Wall-clock timing shared by every benchmark (NumPy only, so that the scripts run in the
Model Garden virtualenv can import it too)."""

import time

import numpy as np


def timed(function):
    """(result, seconds) of one `function()` call, which must block until its result exists."""
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def seconds(function):
    """Wall time of one `function()` call, which must block until its result exists."""
    return timed(function)[1]


def alternating_medians(timers, repeats, warmup=1):
    """Median seconds of each timer, the timers called in turn, one call each per round.

    A timer runs one call and returns its seconds. Taking turns call by call, rather than
    one timer's runs after another's, makes a load that comes and goes on a shared machine
    hit every timer alike, so their ratio holds up. The `warmup` calls of each are untimed
    (they pay for tracing and compilation).
    """
    for timer in timers:
        for _ in range(warmup):
            timer()
    times = [[] for _ in timers]
    for _ in range(repeats):
        for record, timer in zip(times, timers):
            record.append(timer())
    return [float(np.median(record)) for record in times]


def median_seconds(function, repeats, warmup=1):
    """Median wall time of `function()` over `repeats` calls after `warmup` untimed ones."""
    return alternating_medians([lambda: seconds(function)], repeats, warmup)[0]
