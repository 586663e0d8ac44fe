"""The CSV door: mapping files (`mapping`), a streaming reader (`reader`) and the importer (`service`)."""
