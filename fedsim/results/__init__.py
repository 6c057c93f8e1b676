"""Results: records, tables, images."""
