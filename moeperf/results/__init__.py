"""Results: the record schema (schema.py), making records (records.py), writing them as they
are made (writer.py), the one reader of every results file format (reader.py, bench_json.py)
and output folders checked before any work (folders.py).

Nothing here looks an implementation up: a record carries its implementation's identity
from the moment it is made.
"""

from moeperf.results.reader import load_many, load_records, results_files_in
from moeperf.results.records import latest_by_key, new_record, record_key
from moeperf.results.schema import (EP_KEY_FIELDS, EP_PHASES, FIELD_DEFAULTS, KEY_FIELDS,
                                    OK_NUMERIC_FIELDS, REQUIRED_FIELDS, SCHEMA_VERSION,
                                    upgrade)
from moeperf.results.writer import ResultsWriter, set_aside_torn_tail

__all__ = ["EP_KEY_FIELDS", "EP_PHASES", "FIELD_DEFAULTS", "KEY_FIELDS", "OK_NUMERIC_FIELDS", "REQUIRED_FIELDS",
           "SCHEMA_VERSION", "ResultsWriter", "latest_by_key", "load_many", "load_records",
           "new_record", "record_key", "results_files_in", "set_aside_torn_tail", "upgrade"]
