"""Entry for ``streamlit run dashboard/app.py [-- --storage URL]`` from a checkout.

The page itself is ``autopeft/dashboard/app.py`` inside the package, so that an installed autopeft
(``pip install autopeft[dashboard]``, then ``autopeft dashboard``) has it too; this file only runs it.
"""

from autopeft.dashboard.app import main

main()
