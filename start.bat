@echo off
rem One click on Windows: set up .venv on the first run, then start the page and open the browser.
rem Untested here (the project is tested on Linux). Needs Python 3.10+ (the "py" launcher) and ffmpeg on PATH
rem (for example: winget install Gyan.FFmpeg). Extra arguments go to app.py, e.g. start.bat --preset rtx4070-12gb
setlocal
cd /d "%~dp0"
if exist .venv\Scripts\python.exe goto run
echo First start: installing into .venv (a few minutes, once)...
py -3 -m venv .venv || goto fail
rem the CPU build of torch; for an NVIDIA GPU run instead:
rem   .venv\Scripts\python -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
.venv\Scripts\python -m pip install torch==2.13.0 || goto fail
.venv\Scripts\python -m pip install -r requirements.txt || goto fail
:run
.venv\Scripts\python app.py --inbrowser %*
goto :eof
:fail
echo Setup failed; see the messages above. Delete the .venv folder and run start.bat again.
rmdir /s /q .venv
pause
