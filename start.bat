@echo off
rem One click on Windows: set up .venv on the first run, then start the page and open the browser.
rem Untested here (the project is tested on Linux). Needs Python 3.11+ (the "py" launcher) and ffmpeg on PATH
rem (for example: winget install Gyan.FFmpeg). Extra arguments go to app.py, e.g. start.bat --preset rtx4070-12gb
setlocal
cd /d "%~dp0"
if not exist .venv\Scripts\python.exe goto setup
.venv\Scripts\python -c "import sys; sys.exit(sys.version_info < (3, 11))" 2>nul && goto run
echo .venv was made from a Python older than 3.11: making it again.
rmdir /s /q .venv
:setup
rem tomllib and diffusers need Python 3.11+: refuse before creating anything
py -3 -c "import sys; sys.exit(sys.version_info < (3, 11))" 2>nul || goto oldpython
echo First start: installing into .venv (a few minutes, once)...
py -3 -m venv .venv || goto fail
rem the CPU build of torch; for an NVIDIA GPU run instead:
rem   .venv\Scripts\python -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
.venv\Scripts\python -m pip install torch==2.13.0 || goto fail
.venv\Scripts\python -m pip install -r requirements.txt || goto fail
:run
.venv\Scripts\python app.py --inbrowser %*
goto :eof
:oldpython
echo framepack_history needs Python 3.11 or newer; the "py" launcher found none.
echo Install it from https://www.python.org/downloads/ or with: winget install Python.Python.3.11
echo then run start.bat again.
pause
exit /b 1
:fail
echo Setup failed; see the messages above. Delete the .venv folder and run start.bat again.
rmdir /s /q .venv
pause
