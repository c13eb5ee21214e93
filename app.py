"""SimDiff Explorer: the entry point. Registers the pages (titles, icons, sections) and the sidebar
status line every page shares; the pages themselves live in ``pages/``.

    streamlit run app.py        # or: bash scripts/setup.sh app

``st.navigation`` replaces Streamlit's automatic ``pages/`` listing (whose first entry read "app"):
the default page is Load & calibrate (``pages/Load_and_calibrate.py``).
"""

from __future__ import annotations

import streamlit as st

from ui import links, shell

shell.setup_page("SimDiff Explorer", entry=True)  # also reopens a link's run and view (ui/links.py)
nav = st.navigation({section: [st.Page(path, title=title, icon=icon, default=(key == "load"))
                               for key, path, title, icon in entries]
                     for section, entries in shell.NAV.items()})
shell.show_status(st.sidebar.empty())
links.publish()
nav.run()
