"""relay ui: server-rendered pages over a project's runs (a service; it only reads).

``queries`` is the only module here that reads the store, ``layout`` is pure geometry,
``graph`` builds the lineage neighbourhood, ``pages`` renders the templates, ``app`` serves
them beside MLflow's UI. Nothing here writes to the tracking store.
"""
