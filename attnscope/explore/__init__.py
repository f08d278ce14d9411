"""`attnscope explore`: a terminal app to walk through one model's attention on one text.

  session.py  what is shown, computed through `measures.run_attend` and kept within a
              memory budget (no Textual)
  views.py    what each pane says, as rich Text (no Textual, no torch)
  screens.py  the Textual screens and panes: layout, mouse, drawing the tokens by line
  app.py      the Textual app: state, keys, actions, worker threads

Imported only by the `explore` command, so Textual never loads for the other commands.
"""
