"""sparsebin's Streamlit app: `streamlit run app.py`.

`streamlit run` finds the `st.App` below and imports this file once as a
module when the server starts: its lifespan (`sparsebin.startup`) begins a
first start's built-in build and the background worker before any page is
opened. Each page view runs this file as the script (`__name__` is
"__main__"): it continues the first start's builds and runs the pages
(`pages/_router.py`: the worker kept alive, the newest runs preloaded; set
SPARSEBIN_NO_WORKER=1 to skip both, as the tests do).
"""

import streamlit as st

from sparsebin import startup

if __name__ == "__main__":  # a page view (Streamlit runs the script as __main__), or AppTest
    startup.start_first_builds()  # first, before the pages' imports (seconds on a first view)
    from pages._router import run_app

    run_app()
else:  # imported by `streamlit run` (and uvicorn) when the server starts
    app = st.App(__file__, lifespan=startup.server_lifespan)
