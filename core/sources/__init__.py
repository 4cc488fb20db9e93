"""Where pictures come from: COCO2014 (reader, download, checksums), folders, URL lists
(reader, fetching, per-URL state), and shards of any of them."""
