import Config

# Resolved every time the app boots (mix run, mix test, releases):
#
#   * python:      $SNAKEPORT_PYTHON if set, else ../.venv/bin/python (the repo's venv,
#                  where the `snakeport` worker package is installed) if it exists,
#                  else "python3" from $PATH.
#   * python_path: this project's python/ directory, so `import sample_model` works.
project_dir = Path.expand("..", __DIR__)
venv_python = Path.expand("../.venv/bin/python", project_dir)

python =
  case System.get_env("SNAKEPORT_PYTHON") do
    p when is_binary(p) and p != "" -> p
    _ -> if File.exists?(venv_python), do: venv_python, else: "python3"
  end

config :snakeport,
  python: python,
  python_path: [Path.join(project_dir, "python")]
