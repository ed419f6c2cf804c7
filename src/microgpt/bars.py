"""Progress bars (tqdm) on a terminal's standard error: the steps of a run, and the bytes of its data while they
are downloaded or first tokenised. None where standard error is not a terminal: a pipe or a log gets no bars."""

import os
from contextlib import contextmanager

MIN_BAR_COLUMNS, FALLBACK_BAR_COLUMNS, FALLBACK_BAR_ROWS = 20, 80, 24


def step_bar(err, total, initial):
    """A bar of `total` steps from `initial` on the terminal `err`; None elsewhere."""
    if not err.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, file=err, unit='step', leave=False, **bar_layout(err))


class DataBar:
    """A progress(bytes, total or None) callback (fetch, load_corpus) as a bar of bytes on a terminal: the download of
    a data URL, then the first read of a data file (tokenising it into its cache); a count that starts again, or
    with another total, is the next."""

    def __init__(self, err):
        self.err, self.bar, self.done, self.total = err, None, 0, None

    def __call__(self, done, total):
        if self.bar is None or done < self.done or total != self.total:  # the next count: a gzip download counts
            self.close()                                                  # fewer bytes than its file's tokenising
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit='B', unit_scale=True, desc='data', file=self.err,
                            leave=False, **bar_layout(self.err))
            self.total = total
        self.bar.update(done - self.done)
        self.done = done

    def close(self):
        if self.bar is not None:
            self.bar.close()
        self.bar, self.done, self.total = None, 0, None


@contextmanager
def data_bar(err):
    """A DataBar on the terminal `err` (None elsewhere), gone when the block ends: for the data a command reads."""
    bar = DataBar(err) if err.isatty() else None
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()


def bar_layout(err):
    """tqdm's size options for a bar on the terminal `err`: a terminal that reports no width (0 columns, as some
    do) would get a bar of zero width, and one that reports no height none at all (tqdm hides a bar below the last
    of the terminal's rows); a narrow one (under MIN_BAR_COLUMNS) gets a line of its width, which tqdm cuts to fit:
    a wider line wrapped, and the next line's carriage return cleared only its last row."""
    try:
        columns, rows = os.get_terminal_size(err.fileno())
    except (OSError, ValueError, AttributeError):
        columns = rows = 0
    wide, tall = columns >= MIN_BAR_COLUMNS, rows >= 2
    return dict(dynamic_ncols=wide and tall, ncols=None if wide and tall else columns or FALLBACK_BAR_COLUMNS,
                nrows=None if tall else FALLBACK_BAR_ROWS)
