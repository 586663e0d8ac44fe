"""CSV mapping files (`*.yaml`), found by name (`hub import-csv --mapping NAME`, `POST /csv/NAME`) or by feed."""
