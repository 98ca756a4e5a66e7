-- A module the lamp requires. Edit the colors and save: the lamp reloads with them.
return {
  colors = { "red", "green", "blue" },
}
