"""funnel-tw status: the documents, the local API server on a UNIX socket, its client, the text."""
