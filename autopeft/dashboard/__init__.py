"""The Streamlit dashboard: a read-only browser over a study database (``autopeft dashboard``).

``source`` reads the database (read-only, incremental), ``data`` computes what the views show, ``figures``
draws it with Plotly, ``app`` is the Streamlit page. Needs the ``dashboard`` extra (streamlit, plotly, pandas).
"""
